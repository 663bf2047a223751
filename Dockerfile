# Sluice on Node, for Azure Container Apps (or any container runtime).
#
#   docker build -t sluice .
#   docker run --rm -p 8000:8000 -e SLUICE_CONFIG="$(cat sluice.json)" sluice
#   docker run --rm -p 8000:8000 -v "$PWD/sluice.json:/etc/sluice/sluice.json:ro" -e SLUICE_CONFIG=/etc/sluice/sluice.json sluice
#
# The config: --config PATH (append it to the command), SLUICE_CONFIG (a file path, watched and
# hot-reloaded, or the JSON itself), or SLUICE_APPCONFIG_CONNECTION_STRING (Azure App
# Configuration). Without any of them the process exits 2 with a message (SLUICE_REQUIRE_CONFIG
# below), never the laptop demo. Probes: /startup, /readiness, /liveness on port 8000.

# --- build: every dependency, then the bundles under dist/ -----------------------------------
FROM node:20-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY . .
RUN npm run build

# --- runtime: production dependencies and dist/ only ----------------------------------------
FROM node:20-bookworm-slim AS runtime
ENV NODE_ENV=production \
    SLUICE_REQUIRE_CONFIG=1
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY --from=build /src/dist ./dist
# Async jobs default to the directory .sluice/jobs under the working directory: writable by the
# gateway's user (with several replicas configure jobs.store "azure" instead; a replica's disk is
# its own and goes with it).
RUN mkdir -p /app/.sluice && chown node:node /app/.sluice
# The node image's unprivileged user (uid 1000).
USER node
EXPOSE 8000
# Exec form: node is PID 1 and gets SIGTERM itself (no npm, no shell in between), so a stop
# drains in-flight requests within server.shutdownGraceMs, then exits 0.
CMD ["node", "dist/node/main.js"]
