"""One APIRouter per resource (STYLE.md §8): files, jobs, models, exports, keys."""
