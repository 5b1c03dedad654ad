"""The model registry: uploads, validation, versions, downloads, and the content-addressed blobs."""
