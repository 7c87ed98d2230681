"""In-process inference engines, one module per engine; see `engines.base`."""
