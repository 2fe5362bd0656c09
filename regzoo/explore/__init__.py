"""The parameter explorer: move a slider per free parameter and watch the registration change.

``regzoo explore --model CKPT --fixed F --moving M`` serves a local page (loopback only by
default) on which each slider move re-registers the pair with one network forward and redraws
three orthogonal planes of the fixed, warped, difference and Jacobian-determinant images, with
Dice, SDlogJ, folding and each term's energy; "refine" runs the instance optimisation at the
chosen setting and "save" writes what ``regzoo register`` writes.

- [`regzoo.explore.session`][regzoo.explore.session]: the pair, the model and the current result (no
  web code);
- [`regzoo.explore.render`][regzoo.explore.render]: volumes to the bytes and grid nodes the page
  draws;
- [`regzoo.explore.app`][regzoo.explore.app]: the page and its JSON API (Starlette);
- [`regzoo.explore.server`][regzoo.explore.server]: uvicorn on a bound socket;
- [`regzoo.explore.command`][regzoo.explore.command]: the ``regzoo explore`` command.

The web parts need the optional ``explore`` extra (``pip install 'regzoo[explore]'``);
importing this package does not.
"""
