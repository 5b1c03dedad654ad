"""The routes watch (modelfleet.v1.Gateways/WatchRoutes) that feeds standalone gateways."""
