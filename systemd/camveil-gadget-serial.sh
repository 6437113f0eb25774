#!/bin/sh
# camveil-gadget-serial.sh load|start|stop: a USB CDC ACM serial gadget through configfs, so that a
# Raspberry Pi (Zero 2 W, 4 via the USB-C port, 5) shows up as /dev/ttyACM* on the provisioning
# station and gets /dev/ttyGS0 itself (used by `camveil provision-listen`).
#
# Needs, once: `dtoverlay=dwc2,dr_mode=peripheral` in /boot/firmware/config.txt and a reboot.
# Run as root (camveil-gadget-serial.service): `load` (kernel module, configfs mount) needs
# CAP_SYS_MODULE and CAP_SYS_ADMIN; `start` and `stop` need no capability once that is done.
# CONFIGFS and UDC_CLASS may point elsewhere for tests.
set -eu

CONFIGFS=${CONFIGFS:-/sys/kernel/config}
UDC_CLASS=${UDC_CLASS:-/sys/class/udc}
SERIAL_FILE=${SERIAL_FILE:-/sys/firmware/devicetree/base/serial-number}
G="$CONFIGFS/usb_gadget/camveil"

die() { echo "camveil-gadget-serial: $*" >&2; exit 1; }

load() {
    [ "$CONFIGFS" = /sys/kernel/config ] || return 0
    [ -d /sys/module/libcomposite ] || modprobe libcomposite 2>/dev/null \
        || die "kernel module libcomposite missing"
    mountpoint -q "$CONFIGFS" || mount -t configfs none "$CONFIGFS"
}

start() {
    [ -d "$CONFIGFS/usb_gadget" ] || die "$CONFIGFS/usb_gadget missing: is libcomposite loaded?"
    if [ -d "$G" ] && [ -n "$(cat "$G/UDC" 2>/dev/null)" ]; then
        echo "camveil-gadget-serial: gadget already bound"
        return 0
    fi
    mkdir -p "$G"
    echo 0x1d6b > "$G/idVendor"     # Linux Foundation
    echo 0x0104 > "$G/idProduct"    # Multifunction Composite Gadget
    echo 0x0100 > "$G/bcdDevice"
    echo 0x0200 > "$G/bcdUSB"
    echo 0x02 > "$G/bDeviceClass"   # communications (CDC)
    mkdir -p "$G/strings/0x409"
    serial=unknown
    [ -r "$SERIAL_FILE" ] && serial=$(tr -d '\000' < "$SERIAL_FILE")
    echo "$serial" > "$G/strings/0x409/serialnumber"
    echo "camveil" > "$G/strings/0x409/manufacturer"
    echo "camveil unit (provisioning)" > "$G/strings/0x409/product"
    mkdir -p "$G/configs/c.1/strings/0x409"
    echo "CDC ACM" > "$G/configs/c.1/strings/0x409/configuration"
    echo 250 > "$G/configs/c.1/MaxPower"
    mkdir -p "$G/functions/acm.usb0"
    [ -e "$G/configs/c.1/acm.usb0" ] || ln -s "$G/functions/acm.usb0" "$G/configs/c.1/acm.usb0"
    udc=$(ls "$UDC_CLASS" 2>/dev/null | head -n 1)
    [ -n "$udc" ] || die "no USB device controller in $UDC_CLASS: add dtoverlay=dwc2,dr_mode=peripheral to /boot/firmware/config.txt and reboot"
    echo "$udc" > "$G/UDC"
    echo "camveil-gadget-serial: bound to $udc; the station sees /dev/ttyACM*, we use /dev/ttyGS0"
}

stop() {
    [ -d "$G" ] || return 0
    echo "" > "$G/UDC" 2>/dev/null || true
    rm -f "$G/configs/c.1/acm.usb0"
    rmdir "$G/configs/c.1/strings/0x409" "$G/configs/c.1" "$G/functions/acm.usb0" \
        "$G/strings/0x409" "$G" 2>/dev/null || true
}

case "${1:-start}" in
    load) load ;;
    start) start ;;
    stop) stop ;;
    *) die "usage: $0 load|start|stop" ;;
esac
