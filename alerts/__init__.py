"""Routing and delivery of alert notifications."""
