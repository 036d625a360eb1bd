"""What parties agree on: the CGT common data model and data-sharing agreements."""
