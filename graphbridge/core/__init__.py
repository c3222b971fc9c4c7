"""The leaf layer: errors, config field declarations, the graph and its routes, registries, row
helpers.

Nothing here imports from any other part of graphbridge."""
