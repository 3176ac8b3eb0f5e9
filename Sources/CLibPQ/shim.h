#ifndef DTX_CLIBPQ_SHIM_H
#define DTX_CLIBPQ_SHIM_H
#include <libpq-fe.h>
#endif
