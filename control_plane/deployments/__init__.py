"""The Deployments API: start, stop, update, delete, views, dry runs, specs and their validation."""
