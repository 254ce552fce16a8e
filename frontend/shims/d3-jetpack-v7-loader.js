// circuitflow: run npm's d3-jetpack UMD build on top of the global d3 v7.
//
// circuit-tracer 0.5.0's viewer loaded d3 v7 plus a d3-v7 flavoured "jetpack" from
// transformer-circuits.pub. The npm package d3-jetpack@2.3.0 has the same helpers
// (selection.append('div.class'), .at, .st, .translate, .appendMany, .selectAppend,
// .parent, d3.conventions, d3.nestBy, d3.clamp, d3.attachTooltip, ...), but its browser
// builds cannot be used as plain <script>s with d3 v7:
//   - build/d3-jetpack.cjs replaces window.d3 with an empty object when loaded as a
//     browser global;
//   - build/d3v7+jetpack.js patches a second, bundled d3-selection v1 instead of the
//     selection that its exported d3.select returns.
// Its UMD wrapper also supports AMD, so this file defines a one-shot, two-module `define`
// that hands the global d3 v7 to jetpack as its d3-* dependencies, then copies jetpack's
// exports into window.d3 (only names d3 v7 lacks) and removes itself.
//
// Load order (circuitflow.viewer writes it into the viewer's HTML), with nothing in between:
//   d3/dist/d3.min.js, this file, d3-collection/dist/d3-collection.min.js,
//   d3-jetpack/build/d3-jetpack.cjs
// Scripts loaded afterwards (dagre, pako) see no `define` and set their usual globals.
//
// Adaptations:
//   - `event`: d3 v7 passes the event to listeners instead of setting d3.event; jetpack's
//     attachTooltip reads d3Selection.event, which is mapped to window.event here.
//   - d3.nest (d3-collection, used by d3.nestBy) is given to jetpack only; it is not added
//     to window.d3, so d3 v7's own d3.map etc. stay untouched.
//   - c.drawAxis(svg): the viewer calls it on the object d3.conventions returns; npm's
//     jetpack only has the function d3.drawAxis(c) (see withDrawAxisMethod below).
(function () {
  'use strict'
  var d3 = window.d3
  if (!d3 || !d3.selection) {
    throw new Error('d3-jetpack-v7-loader.js: load d3 v7 (d3/dist/d3.min.js) first')
  }

  var selectionWithEvent = Object.create(d3)
  Object.defineProperty(selectionWithEvent, 'event', {
    get: function () { return window.event },
  })

  var expected = ['d3-collection', 'd3-jetpack']
  var loaded = {}

  function define(deps, factory) {
    var name = expected.shift()
    var exports = {}
    var args = deps.map(function (dep) {
      if (dep === 'exports') return exports
      if (dep === 'd3-selection') return selectionWithEvent
      if (dep === 'd3-collection') return loaded['d3-collection']
      return d3
    })
    factory.apply(null, args)
    loaded[name] = exports

    if (name === 'd3-jetpack') {
      Object.keys(exports).forEach(function (key) {
        if (!(key in d3)) d3[key] = exports[key]
      })
      d3.conventions = withDrawAxisMethod(exports.conventions, exports.drawAxis)
      delete window.define
    }
  }

  // The viewer calls c.drawAxis() / c.drawAxis(svg) on the object d3.conventions returns;
  // npm's jetpack only has the function d3.drawAxis(c), which draws into c.svg.
  function withDrawAxisMethod(conventions, drawAxis) {
    return function (options) {
      var c = conventions(options)
      if (!c.drawAxis) {
        c.drawAxis = function (svg) {
          return drawAxis(Object.assign({}, c, {svg: svg || c.svg}))
        }
      }
      return c
    }
  }
  define.amd = {}
  window.define = define
})()
