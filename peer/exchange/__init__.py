"""Moving update and state bytes between peers over p2pd streams: client, server, framed streams, the synchronous service."""
