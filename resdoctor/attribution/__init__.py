"""Attribution (captum): each residual site's share of the output attribution, branch vs skip."""
