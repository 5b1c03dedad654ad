"""The id rule of models, deployments and nodes as data: the control plane
checks it (control_plane.ids) and the REST document states it (control_plane.rest.openapi)."""

MAX_ID_LENGTH = 64
ID_PATTERN = r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$"
