/* The sift loops of shm.heap.IndexedHeap, compiled.

   The heap lives in shared memory as three arrays (int64 keys with one +inf sentinel after the
   last entry, int32 items, int32 positions) plus an int64 size word in the cell header; see
   shm/heap.py. HeapCore holds buffer views of them and runs push, pop, update and remove on the
   raw memory: a sift level costs a few nanoseconds here against ~0.3 us in Python. Callers hold
   the cell lock; nothing here blocks or releases the GIL. shm/heapcore_py.py is the same
   algorithm in Python, used where this extension could not be built. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define KEY_INF INT64_MAX

typedef struct {
    PyObject_HEAD
    Py_buffer keys_view, items_view, pos_view, hdr_view;
    int64_t *keys;
    int32_t *items;
    int32_t *pos;
    int64_t *size;
    Py_ssize_t capacity;
    PyObject *name;
    int open;
} HeapCore;

static int take_view(PyObject *obj, Py_buffer *view, Py_ssize_t itemsize, Py_ssize_t min_items,
                     const char *what) {
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        return -1;
    }
    if (view->len < itemsize * min_items) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, need at least %zd", what, view->len,
                     itemsize * min_items);
        PyBuffer_Release(view);
        return -1;
    }
    if (((uintptr_t)view->buf) % (uintptr_t)itemsize != 0) {
        PyErr_Format(PyExc_ValueError, "%s is not aligned to %zd bytes", what, itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static void release_views(HeapCore *self) {
    if (!self->open) {
        return;
    }
    PyBuffer_Release(&self->keys_view);
    PyBuffer_Release(&self->items_view);
    PyBuffer_Release(&self->pos_view);
    PyBuffer_Release(&self->hdr_view);
    self->open = 0;
}

static int HeapCore_init(HeapCore *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"name", "keys", "items", "pos", "hdr", "size_word", "capacity", NULL};
    PyObject *name, *keys, *items, *pos, *hdr;
    Py_ssize_t size_word, capacity;
    if (self->open) {
        PyErr_SetString(PyExc_RuntimeError, "HeapCore is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "UOOOOnn", kwlist, &name, &keys, &items, &pos,
                                     &hdr, &size_word, &capacity)) {
        return -1;
    }
    if (capacity < 1 || capacity > INT32_MAX || size_word < 0) {
        PyErr_SetString(PyExc_ValueError, "capacity must be in 1..2**31-1, size_word >= 0");
        return -1;
    }
    if (take_view(keys, &self->keys_view, 8, capacity + 1, "keys") < 0) {
        return -1;
    }
    if (take_view(items, &self->items_view, 4, capacity, "items") < 0) {
        PyBuffer_Release(&self->keys_view);
        return -1;
    }
    if (take_view(pos, &self->pos_view, 4, capacity, "pos") < 0) {
        PyBuffer_Release(&self->keys_view);
        PyBuffer_Release(&self->items_view);
        return -1;
    }
    if (take_view(hdr, &self->hdr_view, 8, size_word + 1, "hdr") < 0) {
        PyBuffer_Release(&self->keys_view);
        PyBuffer_Release(&self->items_view);
        PyBuffer_Release(&self->pos_view);
        return -1;
    }
    self->keys = (int64_t *)self->keys_view.buf;
    self->items = (int32_t *)self->items_view.buf;
    self->pos = (int32_t *)self->pos_view.buf;
    self->size = (int64_t *)self->hdr_view.buf + size_word;
    self->capacity = capacity;
    Py_INCREF(name);
    Py_XSETREF(self->name, name);
    self->open = 1;
    return 0;
}

static void HeapCore_dealloc(HeapCore *self) {
    release_views(self);
    Py_XDECREF(self->name);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* ---- the loops: the hole moves, entries are written once per level */

static inline void place(HeapCore *h, int64_t at, int32_t item, int64_t key) {
    h->keys[at] = key;
    h->items[at] = item;
    h->pos[item] = (int32_t)at;
}

/* An entry that cannot be there (a corrupt segment) stops the loop instead of writing outside
   the arrays; the caller raises and the cell's repair rebuilds the heap from the table. */
#define GUARD(h, moved) \
    if ((uint32_t)(moved) >= (uint32_t)(h)->capacity) return -1

static int sift_up(HeapCore *h, int64_t i, int32_t item, int64_t key) {
    int64_t *keys = h->keys;
    int32_t *items = h->items, *pos = h->pos;
    while (i > 0) {
        int64_t parent = (i - 1) >> 1;
        int64_t parent_key = keys[parent];
        if (parent_key <= key) {
            break;
        }
        keys[i] = parent_key;
        int32_t moved = items[parent];
        GUARD(h, moved);
        items[i] = moved;
        pos[moved] = (int32_t)i;
        i = parent;
    }
    place(h, i, item, key);
    return 0;
}

static int sift_down(HeapCore *h, int64_t i, int32_t item, int64_t key) {
    int64_t *keys = h->keys;
    int32_t *items = h->items, *pos = h->pos;
    int64_t n = *h->size;
    int64_t child = 2 * i + 1;
    while (child < n) { /* keys[n] is +inf, so keys[child + 1] always exists */
        int64_t child_key = keys[child];
        int64_t right_key = keys[child + 1];
        if (right_key < child_key) {
            child += 1;
            child_key = right_key;
        }
        if (key <= child_key) {
            break;
        }
        keys[i] = child_key;
        int32_t moved = items[child];
        GUARD(h, moved);
        items[i] = moved;
        pos[moved] = (int32_t)i;
        i = child;
        child = 2 * child + 1;
    }
    place(h, i, item, key);
    return 0;
}

/* Bottom-up: the root's hole sinks along the smaller children to a leaf, then the last
   entry climbs from there (it usually belongs near the bottom). */
static int pop_into_hole(HeapCore *h, int64_t n, int32_t last, int64_t last_key) {
    int64_t *keys = h->keys;
    int32_t *items = h->items, *pos = h->pos;
    int64_t i = 0, child = 1;
    while (child < n) {
        int64_t child_key = keys[child];
        int64_t right_key = keys[child + 1];
        if (right_key < child_key) {
            child += 1;
            child_key = right_key;
        }
        keys[i] = child_key;
        int32_t moved = items[child];
        GUARD(h, moved);
        items[i] = moved;
        pos[moved] = (int32_t)i;
        i = child;
        child = 2 * child + 1;
    }
    return sift_up(h, i, last, last_key);
}

/* ---- methods */

static int check_open(HeapCore *self) {
    if (!self->open) {
        PyErr_SetString(PyExc_ValueError, "the heap's shared memory is released");
        return -1;
    }
    if (*self->size < 0 || *self->size > self->capacity) {
        PyErr_Format(PyExc_RuntimeError, "%U: size %lld outside 0..%zd: the cell needs repair",
                     self->name, (long long)*self->size, self->capacity);
        return -1;
    }
    return 0;
}

static PyObject *corrupt(HeapCore *self) {
    PyErr_Format(PyExc_RuntimeError, "%U holds an item outside 0..%zd: the cell needs repair",
                 self->name, self->capacity - 1);
    return NULL;
}

static int parse_item(HeapCore *self, PyObject *obj, int32_t *out) {
    Py_ssize_t item = PyNumber_AsSsize_t(obj, PyExc_OverflowError);
    if (item == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (item < 0 || item >= self->capacity) {
        PyErr_Format(PyExc_IndexError, "%U: item %zd outside 0..%zd", self->name, item,
                     self->capacity - 1);
        return -1;
    }
    *out = (int32_t)item;
    return 0;
}

static int parse_key(PyObject *obj, int64_t *out) {
    long long key = PyLong_AsLongLong(obj);
    if (key == -1 && PyErr_Occurred()) {
        return -1;
    }
    *out = (int64_t)key;
    return 0;
}

/* The (item, key) arguments of push and update, checked. */
static int parse_item_key(HeapCore *self, PyObject *const *args, Py_ssize_t nargs,
                          const char *usage, int32_t *item, int64_t *key) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    if (check_open(self) < 0 || parse_item(self, args[0], item) < 0 ||
        parse_key(args[1], key) < 0) {
        return -1;
    }
    return 0;
}

static PyObject *HeapCore_push(HeapCore *self, PyObject *const *args, Py_ssize_t nargs) {
    int32_t item;
    int64_t key;
    if (parse_item_key(self, args, nargs, "push(item, key)", &item, &key) < 0) {
        return NULL;
    }
    int64_t n = *self->size;
    if (n >= self->capacity) {
        PyErr_Format(PyExc_IndexError, "%U is full (%zd)", self->name, self->capacity);
        return NULL;
    }
    if (self->pos[item] >= 0) {
        PyErr_Format(PyExc_ValueError, "item %d is already in the %U", (int)item, self->name);
        return NULL;
    }
    *self->size = n + 1;
    self->keys[n + 1] = KEY_INF;
    if (sift_up(self, n, item, key) < 0) {
        return corrupt(self);
    }
    Py_RETURN_NONE;
}

static PyObject *HeapCore_pop(HeapCore *self, PyObject *Py_UNUSED(ignored)) {
    if (check_open(self) < 0) {
        return NULL;
    }
    int64_t n = *self->size - 1;
    if (n < 0) {
        PyErr_Format(PyExc_IndexError, "%U is empty", self->name);
        return NULL;
    }
    int32_t top = self->items[0];
    int32_t last = self->items[n];
    if ((uint32_t)top >= (uint32_t)self->capacity || (uint32_t)last >= (uint32_t)self->capacity) {
        return corrupt(self);
    }
    self->pos[top] = -1;
    *self->size = n;
    int64_t last_key = self->keys[n];
    self->keys[n] = KEY_INF;
    if (n > 0 && pop_into_hole(self, n, last, last_key) < 0) {
        return corrupt(self);
    }
    return PyLong_FromLong(top);
}

static PyObject *HeapCore_update(HeapCore *self, PyObject *const *args, Py_ssize_t nargs) {
    int32_t item;
    int64_t key;
    if (parse_item_key(self, args, nargs, "update(item, key)", &item, &key) < 0) {
        return NULL;
    }
    int64_t at = self->pos[item];
    if (at < 0) {
        PyErr_SetObject(PyExc_KeyError, args[0]);
        return NULL;
    }
    if (at >= *self->size) {
        return corrupt(self);
    }
    int failed = key < self->keys[at] ? sift_up(self, at, item, key)
                                      : sift_down(self, at, item, key);
    if (failed) {
        return corrupt(self);
    }
    Py_RETURN_NONE;
}

static PyObject *HeapCore_remove(HeapCore *self, PyObject *arg) {
    int32_t item;
    if (check_open(self) < 0 || parse_item(self, arg, &item) < 0) {
        return NULL;
    }
    int64_t at = self->pos[item];
    if (at < 0) {
        PyErr_SetObject(PyExc_KeyError, arg);
        return NULL;
    }
    int64_t n = *self->size - 1;
    int32_t last = n >= 0 ? self->items[n] : -1;
    if (at > n || (uint32_t)last >= (uint32_t)self->capacity) {
        return corrupt(self);
    }
    *self->size = n;
    self->pos[item] = -1;
    int64_t last_key = self->keys[n];
    self->keys[n] = KEY_INF;
    if (at == n) {
        Py_RETURN_NONE;
    }
    int failed = at > 0 && self->keys[(at - 1) >> 1] > last_key
                     ? sift_up(self, at, last, last_key)
                     : sift_down(self, at, last, last_key);
    if (failed) {
        return corrupt(self);
    }
    Py_RETURN_NONE;
}

static PyObject *HeapCore_release(HeapCore *self, PyObject *Py_UNUSED(ignored)) {
    release_views(self);
    Py_RETURN_NONE;
}

static PyMethodDef HeapCore_methods[] = {
    {"push", (PyCFunction)(void (*)(void))HeapCore_push, METH_FASTCALL,
     "push(item, key): insert an absent item."},
    {"pop", (PyCFunction)HeapCore_pop, METH_NOARGS,
     "pop() -> item with the smallest key (IndexError if empty)."},
    {"update", (PyCFunction)(void (*)(void))HeapCore_update, METH_FASTCALL,
     "update(item, key): change the key of an item in the heap."},
    {"remove", (PyCFunction)HeapCore_remove, METH_O,
     "remove(item): remove an item from anywhere in the heap."},
    {"release", (PyCFunction)HeapCore_release, METH_NOARGS,
     "release(): drop the buffer views so the segment can be unmapped."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject HeapCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shm._heapcore.HeapCore",
    .tp_doc = "HeapCore(name, keys, items, pos, hdr, size_word, capacity): compiled sift loops.",
    .tp_basicsize = sizeof(HeapCore),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)HeapCore_init,
    .tp_dealloc = (destructor)HeapCore_dealloc,
    .tp_methods = HeapCore_methods,
};

static struct PyModuleDef heapcore_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shm._heapcore",
    .m_doc = "Compiled sift loops for shm.heap (optional; shm/heapcore_py.py is the fallback).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__heapcore(void) {
    if (PyType_Ready(&HeapCoreType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&heapcore_module);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&HeapCoreType);
    if (PyModule_AddObject(module, "HeapCore", (PyObject *)&HeapCoreType) < 0) {
        Py_DECREF(&HeapCoreType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
