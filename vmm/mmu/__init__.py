"""The VMM's MMU: the TLB-fill handler of every engine (guest walk, shadow tables, EPT)."""
