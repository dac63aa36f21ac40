#!/bin/sh
# Install pymacvtap system-wide: `make install` runs this as root.
#
#   packaging/install.sh [PREFIX]          PREFIX: the venv, default /opt/pymacvtap
#
# Creates a virtual environment under PREFIX (world-readable: every user may run the
# client commands), pip-installs the package there (not editable), links the commands
# into BINDIR, and installs the systemd unit, its configuration, the man page and the
# bash completion.  Every directory can be overridden from the environment; DESTDIR is
# prepended to all of them for staged installs (packages), while the paths written into
# the installed files are the final ones.
#
#   DESTDIR        staging root (default: none)
#   BINDIR         /usr/local/bin
#   SYSCONFDIR     /etc               (pymacvtap/pymacvtap.conf; an existing one is kept)
#   UNITDIR        /etc/systemd/system
#   MANDIR         /usr/local/share/man
#   COMPLETIONDIR  /usr/local/share/bash-completion/completions
#   PYTHON         /usr/bin/python3 when present (a venv's python must be readable by all)
#   CREATE_GROUP   1: create the system group "pymacvtap" named in the default config
set -eu

PREFIX=${1:-${PREFIX:-/opt/pymacvtap}}
DESTDIR=${DESTDIR:-}
BINDIR=${BINDIR:-/usr/local/bin}
SYSCONFDIR=${SYSCONFDIR:-/etc}
UNITDIR=${UNITDIR:-/etc/systemd/system}
MANDIR=${MANDIR:-/usr/local/share/man}
COMPLETIONDIR=${COMPLETIONDIR:-/usr/local/share/bash-completion/completions}
CREATE_GROUP=${CREATE_GROUP:-1}
if [ -z "${PYTHON:-}" ]; then
    if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
fi
COMMANDS="pymacvtap pymacvtap-qemu-helper pymacvtap-cni pymacvtap-docker"

case "$PREFIX" in
    /*) ;;
    *) echo "install.sh: PREFIX must be an absolute path, not $PREFIX" >&2; exit 2 ;;
esac
SRC=$(cd "$(dirname "$0")/.." && pwd)
PKG=$SRC/packaging
umask 022

say() { echo "install.sh: $*"; }

# 1. The venv, and the package in it (a copy: the checkout may go away or be private).
say "venv $PREFIX"
"$PYTHON" -m venv --clear "$DESTDIR$PREFIX"
"$DESTDIR$PREFIX/bin/python" -m pip install --quiet --no-cache-dir "$SRC"
if [ -n "$DESTDIR" ]; then
    # A venv records its own path in its scripts: point them at the final location.
    grep -rlI -- "$DESTDIR$PREFIX" "$DESTDIR$PREFIX/bin" "$DESTDIR$PREFIX/pyvenv.cfg" |
        while read -r f; do sed -i "s|$DESTDIR$PREFIX|$PREFIX|g" "$f"; done
fi
chmod -R a+rX "$DESTDIR$PREFIX"

# 2. The commands.
install -d -m 0755 "$DESTDIR$BINDIR"
for cmd in $COMMANDS; do
    if [ ! -x "$DESTDIR$PREFIX/bin/$cmd" ]; then
        echo "install.sh: $PREFIX/bin/$cmd missing: is it in [project.scripts]?" >&2
        exit 1
    fi
    ln -sfn "$PREFIX/bin/$cmd" "$DESTDIR$BINDIR/$cmd"
done
say "commands in $BINDIR: $COMMANDS"

# 3. systemd unit (ExecStart where the command now is) and its configuration.
install -d -m 0755 "$DESTDIR$UNITDIR" "$DESTDIR$SYSCONFDIR/pymacvtap"
sed -e "s|^ExecStart=/usr/local/bin/pymacvtap |ExecStart=$BINDIR/pymacvtap |" \
    -e "s|/etc/pymacvtap/pymacvtap.conf|$SYSCONFDIR/pymacvtap/pymacvtap.conf|" \
    "$PKG/pymacvtap.service" >"$DESTDIR$UNITDIR/pymacvtap.service"
chmod 0644 "$DESTDIR$UNITDIR/pymacvtap.service"
sed -e "s|^ExecStart=/usr/local/bin/pymacvtap-docker |ExecStart=$BINDIR/pymacvtap-docker |" \
    "$PKG/pymacvtap-docker.service" >"$DESTDIR$UNITDIR/pymacvtap-docker.service"
chmod 0644 "$DESTDIR$UNITDIR/pymacvtap-docker.service"
if [ -e "$DESTDIR$SYSCONFDIR/pymacvtap/pymacvtap.conf" ]; then
    say "keeping $SYSCONFDIR/pymacvtap/pymacvtap.conf"
else
    install -m 0644 "$PKG/pymacvtap.conf" "$DESTDIR$SYSCONFDIR/pymacvtap/pymacvtap.conf"
fi
say "units $UNITDIR/pymacvtap.service, pymacvtap-docker.service, config $SYSCONFDIR/pymacvtap/pymacvtap.conf"

# 4. Man page and bash completion.
install -d -m 0755 "$DESTDIR$MANDIR/man8" "$DESTDIR$COMPLETIONDIR"
install -m 0644 "$PKG/pymacvtap.8" "$DESTDIR$MANDIR/man8/pymacvtap.8"
install -m 0644 "$PKG/pymacvtap.bash-completion" "$DESTDIR$COMPLETIONDIR/pymacvtap"
say "man page $MANDIR/man8/pymacvtap.8, completion $COMPLETIONDIR/pymacvtap"

# 5. The admin group of the default configuration.
if [ -z "$DESTDIR" ] && [ "$CREATE_GROUP" = 1 ] && ! getent group pymacvtap >/dev/null; then
    groupadd --system pymacvtap
    say "created group pymacvtap"
fi
if [ -z "$DESTDIR" ] && [ "$UNITDIR" = /etc/systemd/system ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
say "done; start with: systemctl enable --now pymacvtap"
