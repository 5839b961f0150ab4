"""A fixed Fernet key for tests: gateways on Redis need one unless plain text is chosen."""

from __future__ import annotations

#: Fernet.generate_key(), once. Never a real deployment's key.
ENCRYPTION_KEY = "c7a3mITIhBo_dCnOaFulVSb339S_6ym5XFwWdQqL-Eo="
#: The variable that gives it to a gateway process.
ENCRYPTION_KEY_ENV = {"ASYNCGATE_STORE_ENCRYPTION_KEY": ENCRYPTION_KEY}
