"""Ray Serve deployments and app builders (the only package that imports ray.serve)."""
