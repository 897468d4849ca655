"""maillab's ESMTP server: it accepts mail and stores it in per-domain forward files."""
