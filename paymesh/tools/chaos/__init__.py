"""`paymesh chaos`: orders under crashes, NATS restarts and gateway faults, then the money invariants checked.

`plan` makes every choice of a run from its seed, `driver` places the orders and injects the faults
through `paymesh.client`, `facts` reads what the four services hold afterwards (`collect`, which the
e2e invariant test in tests/e2e/test_faults.py uses too), `paymesh.tools.invariants` checks it, and
`command` is the flags and the run that ties them together.
"""

from paymesh.tools.chaos.command import add_arguments, chaos, main, options
from paymesh.tools.chaos.facts import collect

__all__ = ["add_arguments", "chaos", "collect", "main", "options"]
