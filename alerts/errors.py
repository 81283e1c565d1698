"""The exception root of the alerts package."""


class AlertsError(Exception):
    """Bad alerts configuration, a silence that cannot be parsed, or a delivery that cannot be attempted."""
