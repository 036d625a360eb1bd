"""Data-sharing agreements in the hub: storage, lifecycle, signatures, their rules and pages."""
