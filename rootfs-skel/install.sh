#!/bin/sh
# install.sh — puts minos into a root file system tree (an osbuilder rootfs
# before image_builder.sh runs), as docs/images.md's manual steps do. Part of
# the release tarball that `cargo xtask dist` writes; run it from there:
#
#   ./install.sh --root DIR [--keep-chrony] [--initrd]
#
# It installs init as /sbin/init (systemd stays installed: osbuilder's
# image_builder.sh checks for it), links systemctl, poweroff, reboot and
# halt to init, installs busd (as a client of the tree's dbus-daemon when
# the tree has dbus.socket, else as the bus itself, socket-activated) and,
# unless --keep-chrony, timesync in chrony's place (its account added with a
# free system id, never replacing a line). --initrd adds /init. Running it
# again gives the same tree. It never writes outside DIR, and refuses a DIR
# that is /.
set -eu

here=$(cd "$(dirname "$0")" && pwd -P)
usage() {
	echo "usage: install.sh --root DIR [--keep-chrony] [--initrd]"
}
die() {
	echo "install.sh: $*" >&2
	exit 2
}

root=
keep_chrony=no
initrd=no
while [ $# -gt 0 ]; do
	case $1 in
	--root)
		[ $# -ge 2 ] || die "--root needs a directory"
		root=$2
		shift 2
		;;
	--root=*)
		root=${1#--root=}
		shift
		;;
	--keep-chrony)
		keep_chrony=yes
		shift
		;;
	--initrd)
		initrd=yes
		shift
		;;
	-h | --help)
		usage
		exit 0
		;;
	*)
		usage >&2
		die "unknown option $1"
		;;
	esac
done
[ -n "$root" ] || {
	usage >&2
	die "--root DIR is required"
}
[ -d "$root" ] || die "$root is not a directory"
R=$(cd "$root" && pwd -P)
# Any spelling of the root directory (bash's pwd keeps a leading //).
case $R in
*[!/]*) ;;
*) die "refusing to install into / (give the root file system tree an image is built from)" ;;
esac
[ -d "$here/rootfs" ] || die "$here/rootfs is missing: run install.sh from the unpacked release"

# A top-level directory of the tree as a path inside it: on merged-/usr
# trees sbin and bin are links (sbin -> usr/sbin); an absolute link target
# is taken inside the tree, never on this machine.
inside() {
	case $1 in
	*/*) ;;
	*)
		echo "$1"
		return
		;;
	esac
	top=${1%%/*}
	rest=${1#"$top"}
	if [ -L "$R/$top" ]; then
		t=$(readlink "$R/$top")
		t=${t#/}
		echo "$t$rest"
	else
		echo "$1"
	fi
}
# Copies a file of the release to PATH in the tree with MODE, replacing
# (never writing through) a file or link there.
put() {
	mode=$1 src=$2 dst=$R/$(inside "$3")
	mkdir -p "$(dirname "$dst")"
	rm -f "$dst"
	cp "$src" "$dst"
	chmod "$mode" "$dst"
}
# PATH in the tree becomes a symbolic link to TARGET.
link() {
	target=$1 dst=$R/$(inside "$2")
	mkdir -p "$(dirname "$dst")"
	rm -f "$dst"
	ln -s "$target" "$dst"
}

put 755 "$here/rootfs/sbin/init" sbin/init
link /sbin/init usr/bin/systemctl
for c in poweroff reboot halt; do
	link init "sbin/$c"
done
# kata-agent uses /var/run; an osbuilder tree has it, a bare one may not.
if [ ! -e "$R/var/run" ] && [ ! -L "$R/var/run" ]; then
	link ../run var/run
fi

put 755 "$here/rootfs/usr/bin/busd" usr/bin/busd
units=etc/minos/units
if [ -e "$R/usr/lib/systemd/system/dbus.socket" ] || [ -e "$R/lib/systemd/system/dbus.socket" ]; then
	# The tree's dbus-daemon keeps the bus; busd owns systemd1 on it.
	rm -f "$R/$units/busd.socket" "$R/etc/systemd/system/sockets.target.wants/busd.socket"
	put 644 "$here/on-dbus-daemon/busd.service" "$units/busd.service"
	link "/$units/busd.service" etc/systemd/system/basic.target.wants/busd.service
	bus="a client of the tree's dbus-daemon"
else
	rm -f "$R/etc/systemd/system/basic.target.wants/busd.service"
	put 644 "$here/rootfs/$units/busd.socket" "$units/busd.socket"
	put 644 "$here/rootfs/$units/busd.service" "$units/busd.service"
	link "/$units/busd.socket" etc/systemd/system/sockets.target.wants/busd.socket
	bus="the bus, started by its socket"
fi

# The first id from 100 to 999 that neither passwd nor group uses.
free_id() {
	id=100
	while [ $id -le 999 ]; do
		if ! grep -q "^[^:]*:[^:]*:$id:" "$R/etc/passwd" 2>/dev/null &&
			! grep -q "^[^:]*:[^:]*:$id:" "$R/etc/group" 2>/dev/null; then
			echo $id
			return 0
		fi
		id=$((id + 1))
	done
	die "no free system id from 100 to 999 in $R/etc/passwd and $R/etc/group"
}

if [ $keep_chrony = no ]; then
	put 755 "$here/rootfs/usr/bin/timesync" usr/bin/timesync
	put 644 "$here/rootfs/$units/timesync.service" "$units/timesync.service"
	# An edited configuration stays.
	[ -e "$R/etc/timesync.conf" ] || put 644 "$here/rootfs/etc/timesync.conf" etc/timesync.conf
	link timesync.service "$units/chronyd.service"
	mkdir -p "$R/etc"
	touch "$R/etc/passwd" "$R/etc/group"
	if ! grep -q '^timesync:' "$R/etc/group"; then
		gid=$(free_id)
		echo "timesync:x:$gid:" >>"$R/etc/group"
		if [ -f "$R/etc/gshadow" ] && ! grep -q '^timesync:' "$R/etc/gshadow"; then
			echo 'timesync:!::' >>"$R/etc/gshadow"
		fi
	fi
	gid=$(grep '^timesync:' "$R/etc/group" | head -n 1 | cut -d: -f3)
	if ! grep -q '^timesync:' "$R/etc/passwd"; then
		if grep -q "^[^:]*:[^:]*:$gid:" "$R/etc/passwd"; then
			uid=$(free_id)
		else
			uid=$gid
		fi
		echo "timesync:x:$uid:$gid:minos timesync:/run/timesync:/usr/sbin/nologin" >>"$R/etc/passwd"
		if [ -f "$R/etc/shadow" ] && ! grep -q '^timesync:' "$R/etc/shadow"; then
			echo 'timesync:!:::::::' >>"$R/etc/shadow"
		fi
	fi
	time="timesync answers for chronyd.service"
else
	# A link an earlier run made would still hide chrony.
	if [ "$(readlink "$R/$units/chronyd.service" 2>/dev/null)" = timesync.service ]; then
		rm -f "$R/$units/chronyd.service"
	fi
	time="the tree's chrony is kept"
fi

if [ $initrd = yes ]; then
	link /sbin/init init
fi

echo "install.sh: minos $(cat "$here/VERSION") installed into $R: /sbin/init, busd as $bus, $time"
