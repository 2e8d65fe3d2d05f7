/* The cache key this library was built under: build.py compiles it in (-DMINIVISION_BUILD_KEY=<key>, the key in the
 * library's file name), and the loader compares the two, so a library copied by hand under another build's name
 * (another CPU's level, another compiler's) is rebuilt instead of loaded. */
#include <string.h>

#include "minivision_kernels.h"

#define STRINGIFY(x) #x
#define AS_STRING(x) STRINGIFY(x)
#ifdef MINIVISION_BUILD_KEY
static const char BUILD_KEY[] = AS_STRING(MINIVISION_BUILD_KEY);
#else
static const char BUILD_KEY[] = ""; /* built outside build.py */
#endif

int mv_build_key(char *key, long size) {
    if (size < (long)sizeof BUILD_KEY) return 2;
    memcpy(key, BUILD_KEY, sizeof BUILD_KEY);
    return 0;
}
