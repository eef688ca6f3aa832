"""Container healthcheck: healthy when every URL given answers 2xx within 3 s (the images have no curl).

`flower://host:port/path` is a Flower API: HTTPS verified against FEDVLA_ROOT_CERTIFICATES (default
/var/lib/fedvla/certs/ca.crt), or plain HTTP when FEDVLA_INSECURE=true, as the container itself runs it.
"""

import os
import ssl
import sys
import urllib.request

for url in sys.argv[1:]:
    context = None
    if url.startswith("flower://"):
        if os.environ.get("FEDVLA_INSECURE", "false") == "true":
            url = "http://" + url.removeprefix("flower://")
        else:
            url = "https://" + url.removeprefix("flower://")
            context = ssl.create_default_context(
                cafile=os.environ.get("FEDVLA_ROOT_CERTIFICATES", "/var/lib/fedvla/certs/ca.crt"))
    try:
        with urllib.request.urlopen(url, timeout=3, context=context) as response:
            if response.status >= 300:
                sys.exit(f"{url}: HTTP {response.status}")
    except OSError as exc:
        sys.exit(f"{url}: {exc}")
