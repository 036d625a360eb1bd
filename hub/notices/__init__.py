"""The portal inbox: short notices the hub leaves for a user (a release request their
institution may object to, a decision on their own request), each pointing at the page
where they can act. See ``docs/notices.md``."""
