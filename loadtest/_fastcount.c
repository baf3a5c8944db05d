/* The swarm's per-delivery accounting, in C: loadtest.engine.Swarm.on_delivery's fast path.
 *
 * count(frame, hot, local, streams, buckets, rooms) finds the tag `hot` ("RUN:PHASE: ...) in
 * a delivered frame, parses STREAM:SEQ:SENT_NS after it (digits only, ended by a quote), records
 * the latency (now - SENT_NS, in µs, quantized to 11 significant bits) in `buckets`
 * ({value: count}) and advances the stream's watermark in `streams` when the delivery is the
 * next one expected. Then the envelope's "offset" (searched backwards from the frame's end,
 * where relay puts it, then before the tag; -1 when absent or null, as for a direct message):
 * when the stream was in order and the offset is rooms[local] + 1 (the room's next), it is
 * stored there (loadtest.stats.RoomOffsets.last). It returns:
 *   an int > 0      handled; the int is the receive time (ns since the epoch)
 *   (now, key, seq, offset)
 *                   latency recorded; the stream needs loadtest.stats.Accounting.place (and
 *                   then the offset RoomOffsets.check), or, when key is None, the stream was
 *                   in order and only the offset needs RoomOffsets.check
 *   -1              no tag for this phase (a late or foreign delivery)
 *   -2              a tag that does not parse
 * It mirrors the pure-Python path in loadtest/engine.py exactly, which stays the reference
 * (and the fallback where this module was not built); tests/loadtest/test_fastcount.py
 * compares the two.
 */
#define _GNU_SOURCE /* memmem, memrchr */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <time.h>

#define SIG_BITS 11
#define EXACT_BELOW (1LL << SIG_BITS)

/* Parse ASCII digits from p up to (not including) `end` char; 0 on success. */
static int
parse_digits(const char **pp, const char *limit, char end, long long *out)
{
    const char *p = *pp;
    long long v = 0;
    int n = 0;
    while (p < limit && *p != end) {
        char c = *p;
        if (c < '0' || c > '9' || n >= 19) {
            return -1;
        }
        v = v * 10 + (c - '0');
        p++;
        n++;
    }
    if (n == 0 || p >= limit) {
        return -1;
    }
    *pp = p + 1;
    *out = v;
    return 0;
}

/* The envelope's "offset" value, or -1 (absent, null, not a number). Backwards from the end
 * down to the tag's end first (relay's envelope ends with offset and ts, after a data of any
 * size: a byte loop finds it within a few dozen bytes, then memrchr skips a payload's padding
 * quickly), then forwards before the tag (memmem). Only our data sits between the quotes
 * searched, and it holds no "offset" key. */
#define OFFSET_NEAR_END 96
static long long
find_offset(const char *data, const char *limit, const char *tag_at, const char *tag_end)
{
    static const char key[] = "\"offset\":";
    const size_t klen = sizeof(key) - 1;
    const char *hit = NULL;
    const char *q = limit - klen;
    const char *near = limit - OFFSET_NEAR_END > tag_end ? limit - OFFSET_NEAR_END : tag_end;
    for (; q >= near; q--) {
        if (q[0] == '"' && q[1] == 'o' && memcmp(q, key, klen) == 0) {
            hit = q;
            break;
        }
    }
    if (hit == NULL && q >= tag_end) { /* far from the end: quote to quote */
        const char *p = q + 1; /* positions above q were looked at */
        while (p > tag_end) {
            const char *r = memrchr(tag_end, '"', (size_t)(p - tag_end));
            if (r == NULL) {
                break;
            }
            if (r + klen <= limit && memcmp(r, key, klen) == 0) {
                hit = r;
                break;
            }
            p = r;
        }
    }
    if (hit == NULL && (size_t)(tag_at - data) >= klen) {
        hit = memmem(data, (size_t)(tag_at - data), key, klen);
    }
    if (hit == NULL) {
        return -1;
    }
    const char *p = hit + klen;
    while (p < limit && *p == ' ') {
        p++;
    }
    long long v = 0;
    int n = 0;
    while (p < limit && *p >= '0' && *p <= '9') {
        if (++n > 18) {
            return -1;
        }
        v = v * 10 + (*p - '0');
        p++;
    }
    return n ? v : -1;
}

static int
bump_bucket(PyObject *buckets, long long lat)
{
    PyObject *key = PyLong_FromLongLong(lat);
    if (key == NULL) {
        return -1;
    }
    PyObject *old = PyDict_GetItemWithError(buckets, key); /* borrowed */
    long long n = 1;
    if (old != NULL) {
        n = PyLong_AsLongLong(old) + 1;
        if (n == 0 && PyErr_Occurred()) {
            Py_DECREF(key);
            return -1;
        }
    }
    else if (PyErr_Occurred()) {
        Py_DECREF(key);
        return -1;
    }
    PyObject *val = PyLong_FromLongLong(n);
    if (val == NULL) {
        Py_DECREF(key);
        return -1;
    }
    int rc = PyDict_SetItem(buckets, key, val);
    Py_DECREF(key);
    Py_DECREF(val);
    return rc;
}

static PyObject *
count(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "count(frame, hot, local, streams, buckets, rooms)");
        return NULL;
    }
    PyObject *frame = args[0], *hot = args[1], *streams = args[3], *buckets = args[4];
    PyObject *rooms = args[5];
    if (!PyBytes_Check(frame) || !PyBytes_Check(hot) || !PyDict_Check(streams) ||
        !PyDict_Check(buckets) || !PyList_Check(rooms)) {
        PyErr_SetString(PyExc_TypeError, "count(bytes, bytes, int, dict, dict, list)");
        return NULL;
    }
    long long local = PyLong_AsLongLong(args[2]);
    if (local == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (local < 0 || local >= PyList_GET_SIZE(rooms)) {
        PyErr_SetString(PyExc_IndexError, "count: local is not an index of rooms");
        return NULL;
    }
    const char *data = PyBytes_AS_STRING(frame);
    Py_ssize_t size = PyBytes_GET_SIZE(frame);
    const char *tag = PyBytes_AS_STRING(hot);
    Py_ssize_t tag_len = PyBytes_GET_SIZE(hot);
    if (tag_len == 0 || tag_len > size) {
        return PyLong_FromLong(-1);
    }
    const char *at = memmem(data, (size_t)size, tag, (size_t)tag_len);
    if (at == NULL) {
        return PyLong_FromLong(-1);
    }
    const char *p = at + tag_len;
    const char *limit = data + size;
    long long stream, seq, sent;
    if (parse_digits(&p, limit, ':', &stream) || parse_digits(&p, limit, ':', &seq) ||
        parse_digits(&p, limit, '"', &sent) || stream > 0xFFFFFFFFLL) {
        return PyLong_FromLong(-2);
    }
    long long offset = find_offset(data, limit, at, p);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long long now = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    long long lat = now >= sent ? (now - sent) / 1000 : 0;
    if (lat >= EXACT_BELOW) {
        int shift = 0;
        long long v = lat;
        while (v >= EXACT_BELOW) {
            v >>= 1;
            shift++;
        }
        lat = v << shift;
    }
    if (bump_bucket(buckets, lat) < 0) {
        return NULL;
    }
    PyObject *key = PyLong_FromLongLong((local << 32) | stream);
    if (key == NULL) {
        return NULL;
    }
    PyObject *st = PyDict_GetItemWithError(streams, key); /* borrowed */
    if (st == NULL && PyErr_Occurred()) {
        Py_DECREF(key);
        return NULL;
    }
    if (st != NULL && PyList_CheckExact(st) && PyList_GET_SIZE(st) == 3 &&
        PyList_GET_ITEM(st, 2) == Py_None) {
        long long wm = PyLong_AsLongLong(PyList_GET_ITEM(st, 0));
        if (wm == -1 && PyErr_Occurred()) {
            Py_DECREF(key);
            return NULL;
        }
        if (wm == seq) {
            PyObject *next = PyLong_FromLongLong(seq + 1);
            PyObject *high = PyLong_FromLongLong(seq);
            if (next == NULL || high == NULL) {
                Py_XDECREF(next);
                Py_XDECREF(high);
                Py_DECREF(key);
                return NULL;
            }
            PyList_SetItem(st, 0, next); /* steals; releases the old item */
            PyList_SetItem(st, 1, high);
            Py_DECREF(key);
            if (offset < 0) {
                return PyLong_FromLongLong(now);
            }
            long long last = PyLong_AsLongLong(PyList_GET_ITEM(rooms, local));
            if (last == -1 && PyErr_Occurred()) {
                return NULL;
            }
            if (offset == last + 1) {
                PyObject *off = PyLong_FromLongLong(offset);
                if (off == NULL) {
                    return NULL;
                }
                PyList_SetItem(rooms, local, off);
                return PyLong_FromLongLong(now);
            }
            return Py_BuildValue("(LOLL)", now, Py_None, seq, offset);
        }
    }
    PyObject *out = Py_BuildValue("(LNLL)", now, key, seq, offset); /* N: steals key */
    return out;
}

static PyMethodDef methods[] = {
    {"count", (PyCFunction)(void (*)(void))count, METH_FASTCALL,
     "count(frame, hot, local, streams, buckets, rooms): one delivery's accounting (see module "
     "doc)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "loadtest._fastcount",
    "The swarm's per-delivery accounting, in C (optional; loadtest.engine falls back to Python).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__fastcount(void)
{
    PyObject *m = PyModule_Create(&module);
    /* count()'s calling convention: loadtest.engine uses a build of another one (a stale .so)
     * as if none were built. 2: the rooms argument and the offset in the tuple. */
    if (m != NULL && PyModule_AddIntConstant(m, "ABI", 2) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
