# Convenience entry points; the build itself is CMake (CMakeLists.txt).
#   make run   builds Release and starts fermata-server on 127.0.0.1:7878
#              with its data in ./data
#   make test  installs what is missing, then builds and runs every test
#              under ASan+UBSan and in Release with GCC and Clang
JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: all run test build clean

all: build

build:
	tests/deps.sh
	cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build build/release -j$(JOBS)

run: build
	build/release/server/fermata-server --dir ./data

test:
	tests/run.sh

clean:
	rm -rf build
