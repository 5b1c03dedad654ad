"""The model registry: uploads, validation, versions, downloads, and the content-addressed blobs.

registry.py (ModelRegistry: get, list, resolve, download, delete; the door the
API and the deployments use), upload.py (the upload pipeline), probe.py (the
validating probe subprocess), references.py (which blobs are kept), blobs.py
(the files by sha256).
"""
