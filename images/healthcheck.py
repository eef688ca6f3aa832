"""Container healthcheck: healthy when every URL given answers 2xx within 3 s (the images have no curl)."""

import sys
import urllib.request

for url in sys.argv[1:]:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            if response.status >= 300:
                sys.exit(f"{url}: HTTP {response.status}")
    except OSError as exc:
        sys.exit(f"{url}: {exc}")
