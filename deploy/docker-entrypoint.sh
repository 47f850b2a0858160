#!/bin/sh
# Runs stencil-relay as the unprivileged `relay` user. Volumes (Fly's included) are mounted
# root-owned, so when started as root this only fixes the data directory's owner first.
set -eu
if [ "$(id -u)" = "0" ]; then
  chown relay:relay /data
  chmod 700 /data
  exec setpriv --reuid=relay --regid=relay --init-groups --inh-caps=-all stencil-relay "$@"
fi
exec stencil-relay "$@"
