"""tierwise inference side: the Router library and the HTTP service."""
