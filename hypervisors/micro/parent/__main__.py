"""``python -m hypervisors.micro.parent CONTROL_FD``: the parent partition's process."""
import sys

from hypervisors.micro.parent.root import main

sys.exit(main(sys.argv[1:]))
