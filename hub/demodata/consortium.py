"""The demo consortium: its institutions and users, shared by ``cleanroom demo`` (which
seeds them) and the data generator (which writes their files under their names)."""

from __future__ import annotations

# (slug, name, kind)
INSTITUTIONS = (
    ("cleanroom-steward", "Cleanroom Stewardship Office", "steward"),
    ("northbridge-cell", "Northbridge Cell Therapies", "manufacturer"),
    ("st-aurelia", "St Aurelia University Hospital", "hospital"),
    ("kelvin-institute", "Kelvin Institute for Regenerative Medicine", "academic"),
)

# (username, display name, role, institution slug)
USERS = (
    ("steward", "Sam Steward", "steward", "cleanroom-steward"),
    ("northbridge-admin", "Nadia Okafor", "contributor_admin", "northbridge-cell"),
    ("northbridge-data", "Nils Berg", "contributor", "northbridge-cell"),
    ("aurelia-admin", "Amaya Ruiz", "contributor_admin", "st-aurelia"),
    ("aurelia-data", "Tom Achterberg", "contributor", "st-aurelia"),
    ("kelvin-admin", "Kiri Tane", "contributor_admin", "kelvin-institute"),
    ("kelvin-data", "Lena Fischer", "contributor", "kelvin-institute"),
    ("researcher", "Rosa Ibarra", "researcher", "kelvin-institute"),
    ("checker", "Olu Adeyemi", "steward", "cleanroom-steward"),
    # An independent auditor: read-only across institutions, belongs to none of them.
    ("auditor", "Ines Moreau", "auditor", None),
)
