"""The per-record baseline: what a typical hand-written script does to set connection reference display
names, one reference at a time (a client-credentials token, then for each reference a GET by logical
name and a PATCH), sequentially. The benchmark runs it against the same emulator as connref.

    python benchmarks/baseline.py --url URL --authority AUTHORITY --tenant T --client-id C \
        --secret-env NAME --names FILE

FILE is a JSON object {logical name: wanted display name}. Prints the number of references patched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import httpx

from reconciler.api.odata_filter import eq


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--authority", required=True)
    p.add_argument("--tenant", required=True)
    p.add_argument("--client-id", required=True)
    p.add_argument("--secret-env", required=True)
    p.add_argument("--names", required=True)
    args = p.parse_args(argv)
    with open(args.names, encoding="utf-8") as f:
        wanted: dict[str, str] = json.load(f)
    url = args.url.rstrip("/")
    with httpx.Client(timeout=60) as http:
        token = http.post(f"{args.authority.rstrip('/')}/{args.tenant}/oauth2/v2.0/token", data={
            "grant_type": "client_credentials", "client_id": args.client_id,
            "client_secret": os.environ[args.secret_env], "scope": f"{url}/.default",
        }).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json",
                   "OData-Version": "4.0", "OData-MaxVersion": "4.0"}
        patched = 0
        for name, display in wanted.items():
            rows = http.get(f"{url}/api/data/v9.2/connectionreferences", headers=headers, params={
                "$select": "connectionreferenceid,connectionreferencedisplayname",
                "$filter": eq("connectionreferencelogicalname", name).text,
            }).json()["value"]
            if not rows or rows[0]["connectionreferencedisplayname"] == display:
                continue
            resp = http.patch(f"{url}/api/data/v9.2/connectionreferences({rows[0]['connectionreferenceid']})",
                              headers={**headers, "If-Match": "*"},
                              json={"connectionreferencedisplayname": display})
            resp.raise_for_status()
            patched += 1
    print(patched)
    return 0


if __name__ == "__main__":
    sys.exit(main())
