"""Reviewed release of exact results (issue 15): a researcher's request for exact tables and
model estimates, computed on the real pool under the disclosure rules, checked by
independent output checkers, open to the contributing institutions' objections, and
released to the researcher only when approved."""
