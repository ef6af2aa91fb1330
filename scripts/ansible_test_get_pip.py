"""Stand-in for ansible-test's downloaded get-pip bootstrap (no internet on these machines).

ansible-test runs this file as ``__main__`` inside a fresh virtualenv with the arguments it would
give get-pip.py. We bootstrap pip from the interpreter's bundled wheel (ensurepip), then let that pip
install the exact version ansible-test asked for, through the machine's CA bundle.
"""

import ensurepip
import os
import subprocess
import sys

DROPPED = {"--no-setuptools", "--no-wheel"}


def main() -> None:
    ensurepip.bootstrap(upgrade=True)
    args = [a for a in sys.argv[1:] if a not in DROPPED]
    cert = os.environ.get("CHENU_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    if os.path.exists(cert):
        args = ["--cert", cert, *args]
    subprocess.run([sys.executable, "-m", "pip", "install", *args], check=True)


if __name__ == "__main__":
    main()
