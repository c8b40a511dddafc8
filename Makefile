# Thin wrapper for the README's two commands. The build itself is CMake.
#   make run    install what is missing, build, run kpulse in the foreground (config/kpulse.yaml)
#   make test   install what is missing, build, run every test (unit, bpf, e2e)
#   make bench  (see docs/benchmarks.md)
#   make deb    a Debian package built the way a packager would (Debian's flags, no -Werror)

BUILD_DIR ?= build
JOBS ?= $(shell nproc)

# Debian 12 packages: build, then run-time/test tools (nft, ip, promtool and Prometheus; curl and
# openssl for the TLS tests, which make their certificates at test time).
BUILD_DEPS := cmake make g++ clang llvm pkg-config bpftool libbpf-dev libelf-dev zlib1g-dev \
              prometheus-cpp-dev libspdlog-dev libyaml-cpp-dev libsystemd-dev libmicrohttpd-dev \
              libexpected-dev libgtest-dev libgmock-dev libgnutls28-dev libcrypt-dev libcap-dev
# The package test (tests/packaging) also needs dpkg-dev (dpkg-shlibdeps), file (CPack's shlibdeps),
# lintian, adduser, init-system-helpers (deb-systemd-helper), libcap2-bin (capsh) and curl; the
# TLS tests curl and openssl; deploy/tools/render-panels (the alerts e2e test) gnuplot-nox.
TEST_DEPS := nftables iproute2 procps prometheus systemd dpkg-dev file lintian adduser \
             init-system-helpers libcap2-bin curl util-linux openssl gnuplot-nox

.PHONY: deps build run test bench deb clean

# python3-yaml: deploy/tools/gen-prometheusrule and the ConfigMap check of tests/kubernetes.
# Node.js and npm for tests/kubernetes (the manifests against the Kubernetes OpenAPI models):
# Debian's nodejs and npm when node or npm is missing; a node that bundles its own npm (e.g.
# nodesource's) is left alone, since Debian's npm package conflicts with it. Then `npm ci` there,
# only when node_modules is missing or older than package-lock.json.
deps:
	@missing=""; for p in $(BUILD_DEPS) $(TEST_DEPS) python3-yaml; do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	command -v node >/dev/null 2>&1 || missing="$$missing nodejs"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi; \
	if ! command -v npm >/dev/null 2>&1; then \
	  echo "installing: npm"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm; \
	fi; \
	cd tests/kubernetes && \
	if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then \
	  echo "npm ci in tests/kubernetes"; \
	  npm ci --no-audit --no-fund --loglevel=error; \
	fi

build: deps
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKPULSE_WERROR=ON
	cmake --build $(BUILD_DIR) -j $(JOBS)

run: build
	$(BUILD_DIR)/daemon/kpulse --config config/kpulse.yaml

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure --no-tests=error -j 1

bench: build
	$(BUILD_DIR)/tests/kpulse_sched_bench 7 1
	$(BUILD_DIR)/tests/kpulse_cgroup_spread_bench 3 1 1000
	$(BUILD_DIR)/tests/kpulse_scrape_bench 21 idle 60

# Debian's build flags (hardening=+all: fortify, stack protector, relro, bindnow, format-security),
# CPPFLAGS folded into C/CXXFLAGS as debhelper does for CMake; no tests, no -Werror.
DEB_BUILD_DIR ?= build-deb
deb: deps
	eval "$$(DEB_BUILD_MAINT_OPTIONS=hardening=+all dpkg-buildflags --export=sh)"; \
	  export CFLAGS="$$CFLAGS $$CPPFLAGS" CXXFLAGS="$$CXXFLAGS $$CPPFLAGS"; \
	  cmake -S . -B $(DEB_BUILD_DIR) -DCMAKE_BUILD_TYPE=None -DKPULSE_BUILD_TESTS=OFF -DKPULSE_WERROR=OFF
	cmake --build $(DEB_BUILD_DIR) -j $(JOBS)
	cd $(DEB_BUILD_DIR) && cpack -G DEB
	lintian $(DEB_BUILD_DIR)/package/kpulse_*.deb

clean:
	rm -rf $(BUILD_DIR) $(DEB_BUILD_DIR)
