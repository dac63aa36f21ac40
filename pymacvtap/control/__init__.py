"""The control socket: versioned JSON requests, authorised by the caller's SO_PEERCRED."""
