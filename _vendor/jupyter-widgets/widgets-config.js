// spatialkit: loaded between require.js and embed-amd.js (see _config.yml, nb_ipywidgets_js).
// Each AMD module of the widget bundle finds its assets (Font Awesome fonts) in the folder of its
// own module URL, which require.js would otherwise resolve against the page's folder (404s on every
// chapter). Map every @jupyter-widgets module to this folder, whatever the page's depth; works over
// HTTP and from file://.
(function () {
  var here = document.currentScript.src.replace(/[?#].*$/, "").replace(/\/[^\/]*$/, "");
  require.config({
    paths: {
      "@jupyter-widgets": here,                      // @jupyter-widgets/controls -> here/controls.js
      "@jupyter-widgets/html-manager/dist": here,    // .../dist/libembed-amd -> here/libembed-amd.js
    },
  });
})();
