/* fix ID group mlmix/centres: pair styles compute only the group's atoms as centres.

   Usage:  fix ID group-ID mlmix/centres

   Before every force computation (setup and each step) the perpetual neighbour lists
   requested by the pair style (and by every sub-style of a hybrid style) are
   partitioned so that the group's local atoms come first, and the list's number of
   centres (inum) is cut to their count. The neighbours of each centre stay complete:
   only the loop over centres is shortened. After the force computation inum is
   restored, so the lists are whole again for anything else that reads them and for
   the next step, whether or not LAMMPS rebuilds them.

   What this computes is the pair style's force with only the group's atoms as
   centres. For styles whose energy is a sum of per-centre energies from a full list
   (snap, mliap, pace) this is -d(sum_{i in group} E_i)/dx. Which other styles give
   exact forces on the group's interior is a property of the style; mlmix decides it
   and tests it, this fix only truncates.

   Global vector, this rank's values (callers sum them over ranks):
     [0] centres kept in the last truncation (the largest over the lists: a hybrid
         sub-style defined for some types only has a list without the other atoms)
     [1] centres the largest list held before it
     [2] number of neighbour lists truncated
     [3] number of force computations truncated since the fix was created
   The global scalar is [0].

   The group may change between runs (group clear / group variable); membership is
   read from atom->mask at every force computation.  */

#include "atom.h"
#include "error.h"
#include "fix.h"
#include "force.h"
#include "lammps.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"

#include "lammpsplugin.h"

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#ifndef MLMIX_LAMMPS_NUM_VER
#error "compile with -DMLMIX_LAMMPS_NUM_VER=<lammps.lammps().version(), e.g. 20250722>"
#endif

using namespace LAMMPS_NS;

namespace {

class FixMlmixCentres : public Fix {
 public:
  FixMlmixCentres(LAMMPS *lmp, int narg, char **arg) : Fix(lmp, narg, arg)
  {
    if (narg != 3) error->all(FLERR, "Illegal fix mlmix/centres command: no arguments after the group");
    scalar_flag = 1;
    vector_flag = 1;
    size_vector = 4;
    global_freq = 1;
    extscalar = 0;
    extvector = 0;
  }

  int setmask() override
  {
    return FixConst::PRE_FORCE | FixConst::POST_FORCE | FixConst::MIN_PRE_FORCE |
        FixConst::MIN_POST_FORCE;
  }

  void init() override
  {
    if (force->pair == nullptr) error->all(FLERR, "fix mlmix/centres needs a pair style");
    if (update->whichflag == 1 && std::strncmp(update->integrate_style, "verlet", 6) != 0)
      error->all(FLERR, "fix mlmix/centres works with run_style verlet only (not {})",
                 update->integrate_style);
  }

  // setup_pre_force runs before the setup's force computation, setup() after it.
  void setup_pre_force(int) override { truncate(); }
  void setup(int) override { restore(); }
  void pre_force(int) override { truncate(); }
  void post_force(int) override { restore(); }
  void min_setup(int) override { restore(); }
  void min_pre_force(int) override { truncate(); }
  void min_post_force(int) override { restore(); }
  void post_run() override { restore(); }

  double compute_scalar() override { return compute_vector(0); }

  // This rank's counts: LAMMPS reads a fix's global values on each rank separately,
  // and leaving MPI calls out keeps the binary independent of the MPI ABI.
  double compute_vector(int n) override
  {
    switch (n) {
      case 0: return static_cast<double>(kept_);
      case 1: return static_cast<double>(held_);
      case 2: return static_cast<double>(nlists_);
      case 3: return static_cast<double>(ncalls_);
      default: return 0.0;
    }
  }

 private:
  std::vector<std::pair<NeighList *, int>> saved_;   // (list, its full inum)
  int kept_ = 0, held_ = 0, nlists_ = 0;
  long ncalls_ = 0;

  void truncate()
  {
    restore();    // in case a previous computation stopped between the two calls
    const int *mask = atom->mask;
    kept_ = held_ = 0;
    for (int m = 0; m < neighbor->nlist; m++) {
      NeighList *list = neighbor->lists[m];
      if (list == nullptr || list->requestor_type != NeighList::PAIR || list->occasional) continue;
      if (list->ghost || list->gnum > 0)
        error->all(FLERR, "fix mlmix/centres: pair style {} keeps neighbour lists of ghost atoms, "
                   "which cannot be truncated", force->pair_style);
      if (list->respaouter || list->respainner || list->respamiddle)
        error->all(FLERR, "fix mlmix/centres does not support r-RESPA neighbour lists");
      const int n = list->inum;
      int *ilist = list->ilist;
      // Stable: the kept centres stay in the order LAMMPS built them. Lists that share
      // one ilist array (copied lists) see it partitioned again, which changes nothing.
      for (int a = 0; a < n; a++) {
        const int i = ilist[a];
        if (mask[i] & groupbit) buffer_.push_back(i);
        else rest_.push_back(i);
      }
      const int k = static_cast<int>(buffer_.size());
      std::copy(buffer_.begin(), buffer_.end(), ilist);
      std::copy(rest_.begin(), rest_.end(), ilist + k);
      buffer_.clear();
      rest_.clear();
      saved_.emplace_back(list, n);
      list->inum = k;
      kept_ = std::max(kept_, k);
      held_ = std::max(held_, n);
    }
    nlists_ = static_cast<int>(saved_.size());
    ncalls_++;
  }

  void restore()
  {
    for (auto &s : saved_) s.first->inum = s.second;
    saved_.clear();
  }

  std::vector<int> buffer_, rest_;
};

Fix *create_fix(LAMMPS *lmp, int narg, char **arg)
{
  return new FixMlmixCentres(lmp, narg, arg);
}

}    // namespace

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  // A binary built for another LAMMPS registers nothing, so "fix mlmix/centres" fails
  // with an unknown-style error instead of running against a different ABI.
  auto *instance = static_cast<LAMMPS *>(lmp);
  if (instance->num_ver != MLMIX_LAMMPS_NUM_VER) return;
  lammpsplugin_t plugin;
  plugin.version = instance->version;
  plugin.style = "fix";
  plugin.name = "mlmix/centres";
  plugin.info = "mlmix: pair styles compute only the fix group's atoms as centres";
  plugin.author = "mlmix developers";
  plugin.creator.v2 = reinterpret_cast<lammpsplugin_factory2 *>(&create_fix);
  plugin.handle = handle;
  (*reinterpret_cast<lammpsplugin_regfunc>(regfunc))(&plugin, lmp);
}
