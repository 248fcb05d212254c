"""The micro hypervisor (Hyper-V style): a hypervisor process that partitions, schedules and
dispatches exits, and a parent (root) partition process that runs every device model and the
VMBus server; see ARCHITECTURE.md, section "micro"."""
