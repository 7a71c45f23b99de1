"""Moving machines to and from other hypervisors: disk export, OVA, image import."""
