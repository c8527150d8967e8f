"""Right-sized deployment: export only the experts a customer needs (DESIGN.md "Deployment")."""
