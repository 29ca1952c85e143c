"""The service's version, shown in the OpenAPI document and the provider user agent."""

__version__ = "1.0.0"
