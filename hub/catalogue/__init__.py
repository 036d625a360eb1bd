"""The data catalogue: the common data model's tables and columns in plain words, and, per
agreement, what it covers, who contributes and roughly how many patients (docs/catalogue.md)."""
