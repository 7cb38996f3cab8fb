# Loaded by the guest's init at every boot (modprobe -a); a module missing from the kernel is skipped
# at build time.
virtio_net
virtio_console
virtio_balloon
isofs
vfat
pvpanic_mmio
pvpanic_pci
tun
# button + evdev turn the ACPI power button (q35 PM, microvm GED) into an input event for acpid.
button
evdev
