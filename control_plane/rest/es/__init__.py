"""The Elasticsearch trained-model-deployment API shape on the control plane's REST server."""
