"""Optional parts of moeforge that one feature needs, installed as extras (`pip install 'moeforge[s3]'`).

`require` imports such a part where the feature starts, so a user without it gets one clear line
naming the extra to install instead of an ImportError from deep inside.
"""

import importlib
from types import ModuleType

from moeforge.errors import ConfigError

EXTRAS = {"s3": ("boto3", "botocore"), "bench": ("peft",), "postgres": ("psycopg",),
          "deploy": ("model_signing", "OpenSSL", "cyclonedx"), "serve": ("fastapi", "uvicorn"),
          "service": ("python_multipart", "httpx"), "lean": ("bitsandbytes",)}  # and serve's


def require(extra: str, feature: str) -> list[ModuleType]:
    """The modules of EXTRA, imported; ConfigError naming FEATURE and the install command when one is missing."""
    modules = []
    for name in EXTRAS[extra]:
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            raise ConfigError(
                f"{feature} needs the '{extra}' extra ({name} is not installed): pip install 'moeforge[{extra}]'"
            ) from None
    return modules
