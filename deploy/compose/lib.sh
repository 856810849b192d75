# Shared by up and down: `compose ARGS` runs the Compose tool on compose.yaml (the `docker
# compose` plugin when present, else Debian's docker-compose).
compose() {
  if docker compose version >/dev/null 2>&1; then
    docker compose -f "$here/compose.yaml" "$@"
  else
    docker-compose -f "$here/compose.yaml" "$@"
  fi
}
