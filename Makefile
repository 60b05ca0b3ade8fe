# The two commands of the README: `make run` and `make test`.
# Both install missing Debian packages (scripts/setup.sh), configure and build.
BUILD ?= build
JOBS  ?= $(shell nproc)

.PHONY: all setup build run test bench clean
all: build

setup:
	@scripts/setup.sh

$(BUILD)/CMakeCache.txt: | setup
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release

build: setup $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

run: build
	$(BUILD)/dagr train

test: build
	cd $(BUILD) && ctest --output-on-failure --timeout 600

bench: build
	$(BUILD)/dagr bench allreduce -n $(JOBS)

clean:
	rm -rf $(BUILD)
