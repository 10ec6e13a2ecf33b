"""Local emulators of the remote services (installed as ``accessproof_fakes``)."""
